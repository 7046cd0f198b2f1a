"""Final-answer extraction and comparison, and SciBench's own scoring.

Two scorers live here:

- `answers_match(pred, gold)`: the held-out eval split (MathCodeInstruct-style golds such as `5`,
  `\\frac{1}{2}`, `x=3`, `25\\%`, `1{,}000`). Numbers are compared as numbers (LaTeX fractions, roots,
  scientific notation, thousands separators, percent and trailing units understood), everything else
  as a normalised string.
- `scibench_correct(output, answer_number, unit)`: SciBench's zero-shot scoring (`eval/post_process.py`
  and `eval/eval_zero.py` of mandyyyyii/scibench) ported faithfully: the last `\\boxed{}`, the text after
  its last `=`, `float()` after removing commas (or of the first whitespace token), `math.isclose(...,
  rel_tol=0.05)`, and, when the unit carries a power of ten *and* some other unit, both sides rescaled to
  absolute values (the prompt then names only the rest of the unit, see `scibench_prompt_unit`).
  `scibench_correct_lenient` is the same comparison with this module's robust parser instead of `float()`.

Everything is pure Python (no torch): cheap to import and to test.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import NamedTuple

# --- boxed answers ----------------------------------------------------------------------------------

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at `text[start] == '{'` and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or of `\\boxed 5`.

    None when there is none or the last one is never closed (a truncated generation).
    """
    idx = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if idx < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, idx))
    rest = idx + len(cmd)
    j = rest
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        found = braced(text, j)
        return found[0].strip() if found else None
    if j > rest:  # `\boxed 5`: the token after the space, up to `$` or the end of the line
        m = re.match(r"[^\s$]+", text[j:])
        return m.group(0) if m else None
    return None


# --- extraction outside \boxed{} ---------------------------------------------------------------------


class Extraction(NamedTuple):
    """The answer found in a generation and how it was found ('boxed', 'answer-is', 'last-number', 'none')."""

    answer: str | None
    method: str


_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def _answer_region(text: str) -> str:
    """The part after the last `</think>` when it says anything, else the whole text."""
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        if after.strip():
            return after
    return text


def _answer_is(text: str) -> str | None:
    """X from the last 'the answer is X' / 'Final answer: X' (up to the end of the sentence)."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    tail = matches[-1].group(1).strip()
    if tail.startswith("$"):
        close = tail.find("$", 1)
        if close > 0:
            return tail[1:close].strip() or None
    tail = re.split(r"\n|\.\s|\.$", tail, maxsplit=1)[0]
    return tail.strip().rstrip(".").strip() or None


def extract_answer(text: str) -> Extraction:
    """The final answer of a model output: last `\\boxed{}`, else 'the answer is X', else the last number."""
    boxed = last_boxed(text)
    if boxed:
        return Extraction(boxed, "boxed")
    region = _answer_region(text)
    said = _answer_is(region)
    if said:
        return Extraction(said, "answer-is")
    numbers = _NUMBER.findall(region)
    if numbers:
        return Extraction(numbers[-1].rstrip(","), "last-number")
    return Extraction(None, "none")


# --- normalisation -----------------------------------------------------------------------------------

_WRAPPERS = ("\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\operatorname", "\\mbox")
_DROP = (
    "\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad", "\\ ",
    "\\bigl", "\\bigr", "\\Bigl", "\\Bigr",
)  # fmt: skip


def _unwrap(text: str, commands: tuple[str, ...]) -> str:
    """`\\text{abc}` -> `abc` for each command (nested braces respected)."""
    for cmd in commands:
        pattern = re.compile(re.escape(cmd) + r"\s*\{")
        while (m := pattern.search(text)) is not None:
            found = braced(text, m.end() - 1)
            if found is None:
                break
            text = text[: m.start()] + found[0] + text[found[1] :]
    return text


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left) : len(text) - len(right)].strip()
    return text.replace("$", "")


def clean_answer(answer: str) -> str:
    """A LaTeX answer without presentation: `$..$`, `\\left`, `\\text{}`, spacing, `x =` prefixes."""
    text = _strip_math_delimiters(answer.replace("\\$", ""))
    text = text.replace("~", " ").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("−", "-")
    text = text.replace("\\%", "%").replace("{,}", ",")
    for token in _DROP:
        text = text.replace(token, " " if token in ("\\ ", "\\quad", "\\qquad") else "")
    text = _unwrap(text, _WRAPPERS)
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ", "", text)
    # `x = 3`, `f'(x) = 2x`: keep what follows the last '=' (not `<=`, `>=`, `\leq`...)
    parts = re.split(r"(?<![<>!\\])=", text)
    if len(parts) > 1 and parts[-1].strip():
        text = parts[-1]
    text = text.strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", text)


def _canonical_string(answer: str) -> str:
    """A comparison key for non-numeric answers: no spaces, `\\frac12` -> `\\frac{1}{2}`."""
    text = clean_answer(answer)
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", text)
    text = re.sub(r"\^\{(\w)\}", r"^\1", text)
    return text.replace(" ", "").lower()


# --- numbers -----------------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _safe_eval(node: ast.AST) -> float:
    """Evaluate an arithmetic AST of numbers, + - * / **, sqrt() and pi; anything else raises ValueError."""
    if isinstance(node, ast.Expression):
        return _safe_eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _safe_eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_safe_eval(node.left), _safe_eval(node.right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _safe_eval(node.left), _safe_eval(node.right)
        if abs(exponent) > 400 or (base == 0 and exponent < 0):
            raise ValueError("exponent out of range")
        return float(base**exponent)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "sqrt"
        and not node.keywords
    ):
        (arg,) = node.args  # one argument, else ValueError
        return math.sqrt(_safe_eval(arg))
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    raise ValueError(f"not plain arithmetic: {ast.dump(node)[:60]}")


def _latex_to_python(text: str) -> str:
    """Rewrite LaTeX arithmetic as a Python expression (fractions, roots, powers, times, pi)."""
    text = text.replace("\\frac", "\\frac ")
    while (m := re.search(r"\\frac\s*\{", text)) is not None:
        num = braced(text, m.end() - 1)
        if num is None or num[1] >= len(text) or text[num[1]] != "{":
            raise ValueError("malformed \\frac")
        den = braced(text, num[1])
        if den is None:
            raise ValueError("malformed \\frac")
        text = f"{text[: m.start()]}(({num[0]})/({den[0]})){text[den[1] :]}"
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"((\1)/(\2))", text)
    text = re.sub(r"\\sqrt\s*(\d+(?:\.\d+)?)", r"sqrt(\1)", text)
    text = re.sub(r"\\sqrt\s*\{", "sqrt{", text)
    text = re.sub(r"(\d)\s*(?:\\times|\\cdot|×|x|\*)\s*10\s*\^", r"\1*10^", text)
    text = text.replace("\\times", "*").replace("\\cdot", "*").replace("×", "*").replace("\\pi", "pi")
    text = text.replace("{", "(").replace("}", ")").replace("^", "**")
    # implicit multiplication: 2sqrt(3), 2pi, 2(3), )(, )sqrt
    text = re.sub(r"(\d|\))\s*(?=sqrt|pi|\()", r"\1*", text)
    text = re.sub(r"(pi)\s*(?=\d|\(|sqrt)", r"\1*", text)
    return text


_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_UNIT_TAIL = re.compile(r"^[A-Za-zµμΩÅ°%/\s\-^()0-9.~·*]*$")
_LEADING_NUMBER = re.compile(
    r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*\*\s*10\s*\*\*\s*\(?\s*[-+]?\d+\s*\)?)?)(.*)$"
)


class Number(NamedTuple):
    """A parsed numeric answer; `percent` is True when it was written with a % sign."""

    value: float
    percent: bool


def parse_number(answer: str | None, allow_units: bool = True) -> Number | None:
    """The numeric value of an answer such as `1,234.5`, `\\dfrac{3}{4}`, `1.2 \\times 10^{-3}`, `25\\%`,
    `3\\sqrt{2}`, `50 \\text{ N}`; None when it is not a number (a variable, a tuple, words).

    With `allow_units`, a trailing unit (`50 N`, `9.8 m/s^2`) is dropped when the head is a number.
    """
    if answer is None:
        return None
    text = clean_answer(answer)
    percent = "%" in text
    text = text.replace("%", "").strip()
    text = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), text)
    if not text or "," in text:
        return None
    value = _arithmetic(text)
    if value is None and allow_units:
        value = _number_with_unit(text)
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return Number(value, percent)


def _arithmetic(text: str) -> float | None:
    try:
        expr = _latex_to_python(text)
        return _safe_eval(ast.parse(expr, mode="eval"))
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None


def _number_with_unit(text: str) -> float | None:
    """`50 N` -> 50.0, `3.0 \\times 10^{8} m/s` -> 3e8; None when the tail looks like algebra (`3x+1`)."""
    try:
        expr = _latex_to_python(text)
    except ValueError:
        return None
    m = _LEADING_NUMBER.match(expr)
    if m is None:
        return None
    tail = m.group(2).replace("\\", "").strip()
    if not tail or not re.search(r"[A-Za-zµμΩÅ°]", tail) or not _UNIT_TAIL.match(tail) or "+" in tail:
        return None
    if re.match(r"^[\-*/(]", tail):  # `2 - x`, `2(x+1)`, `3*x`: an expression, not a unit
        return None
    return _arithmetic(m.group(1))


def _decimals(gold: str) -> int:
    m = re.search(r"\.(\d+)\s*%?$", clean_answer(gold))
    return len(m.group(1)) if m else 0


def numbers_close(pred: float, gold: float, rel_tol: float = 1e-4, decimals: int = 0) -> bool:
    """True when pred equals gold within rel_tol, or rounds to it at the gold's decimals (2 or more)."""
    if math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=1e-9):
        return True
    # Only golds given to 2+ decimals: `0.5` may be a rounded 0.45 or an exact half; `0.333` is a rounded 1/3.
    return decimals >= 2 and round(pred, decimals) == round(gold, decimals)


def answers_match(pred: str | None, gold: str, rel_tol: float = 1e-4) -> bool:
    """Whether a predicted final answer equals the gold one.

    A numeric gold (no units needed) is compared numerically: relative tolerance `rel_tol`, or equal after
    rounding to the gold's decimals (`0.333` vs `\\frac{1}{3}`); a percent on either side also accepts
    the value/100 reading (`25\\%` vs `0.25`). Other golds compare as normalised strings (`x=3` vs `3`,
    `\\dfrac12` vs `\\frac{1}{2}`, `\\left(1,2\\right)` vs `(1, 2)`).
    """
    if pred is None or not gold.strip():
        return False
    gold_num = parse_number(gold, allow_units=False)
    if gold_num is not None:
        pred_num = parse_number(pred)
        if pred_num is None:
            return False
        decimals = _decimals(gold)
        candidates = [pred_num.value]
        if pred_num.percent != gold_num.percent:
            candidates += [pred_num.value / 100, pred_num.value * 100]
        return any(numbers_close(c, gold_num.value, rel_tol, decimals) for c in candidates)
    return _canonical_string(pred) == _canonical_string(gold)


# --- SciBench -----------------------------------------------------------------------------------------

# --- statistics ---------------------------------------------------------------------------------------


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (sensible at 0/n and n/n, unlike the normal one)."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
