"""Settings: parsed once, at the edge, from `R1FT_*` env vars (plus `HF_TOKEN`, `AWS_*`, Vast's
variables) and an optional `.env` file; validated, frozen, passed down.

pydantic-settings does the reading: the `R1FT_` prefix, the standard names as aliases, the `.env` file
(the process environment wins over it), and the preset's values as the lowest-priority source (an explicit
variable always wins). r1ft adds what the library does not: every problem reported at once with its fix,
and an unknown `R1FT_*` name reported as an error with the closest valid name; both in
`r1ft.settings_load`, which runs the cross-field checks of `r1ft.validation` too.

Nothing below this module reads `os.environ`. This module must stay light: it is imported before
torch so that `r1ft plan` with bad settings answers in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from r1ft.export.gguf_types import SUPPORTED_GGUF_TYPES
from r1ft.model.tiny import TINY_MODEL
from r1ft.presets import PRESETS

PREFIX = "R1FT_"
BASE_MODEL_ID = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
BASE_MODEL_REVISION = "ad9f0ae0864d7fbcd1cd905e3c6c5b069cc8b562"
# The MATH-500 commit evaluation projects pin (r1ft.tasks.math500 says where it was found).
MATH500_REVISION = "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be"

# R1FT_OPTIM's names (transformers'): AdamW, the notebook's update rule, with 32-bit or 8-bit moments. Other
# families (Adafactor, Lion, SGD, GaLore...) make another experiment, for which the learning rate is untuned.
Optimizer = Literal[
    "auto", "adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "adamw_8bit", "paged_adamw_8bit"
]  # fmt: skip


class Settings(BaseSettings):
    """Every knob of a run. Field descriptions double as the docs of `.env.example`."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        frozen=True,
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        env_ignore_empty=True,  # VAR= (as docker --env-file writes an unset value) means unset
        allow_inf_nan=False,  # R1FT_EPOCHS=inf would pass gt=0 and break the plan's arithmetic
    )

    # --- job -------------------------------------------------------------------------------------
    preset: Literal["full", "original", "smoke"] = Field(
        "full",
        json_schema_extra={"section": "job"},
        description="full = r1ft's recipe (README: what it changes against the notebook); original = the notebook's "
        "recipe in meaning (NF4 base, paged AdamW 8-bit); smoke = embedded tiny model and samples, CPU, minutes",
    )
    output: str = Field(
        "",
        description="where results go: hf://owner/name[@revision], s3://bucket/prefix, a path or file:// URI "
        "(empty: runs/<run id>)",
    )
    work_dir: Annotated[Path, AfterValidator(Path.expanduser)] = Field(  # ~/x is $HOME/x, not ./~/x
        Path("work"), description="the one directory the job writes (caches, data, checkpoints, outputs)"
    )
    run_id: str = Field("", description="run name; empty: derived from the settings and data (resume key)")
    disk_budget_gb: float = Field(16.0, gt=0, description="the whole job's disk budget in GB (work dir)")
    disk_free_floor_gb: float = Field(
        2.0, ge=0, description="free space (GB) always kept on the work dir's filesystem"
    )
    stop_instance: Literal["auto", "destroy", "stop", "none"] = Field(
        "auto",
        description="after publishing on Vast: destroy, stop, none; auto = destroy after a verified publish, "
        "stop after a failed one",
    )
    hf_private: bool = Field(True, description="create the Hub repo private")
    push_checkpoint_every: int = Field(
        1,
        ge=0,
        description="push last-checkpoint/ to the destination every N saves during training (0: only after "
        "training and after a stop)",
    )
    num_processes: int = Field(0, ge=0, description="training processes (GPUs); 0: one per visible GPU")
    gguf: str = Field(
        "",
        description="comma-separated GGUF types to export (f16 bf16 q8_0 q4_k_m q5_k_m q6_k), e.g. q4_k_m,q8_0",
    )
    gpu_hourly_usd: float = Field(0.0, ge=0, description="$/hour of the machine, for the plan's cost line")

    # --- model and recipe -------------------------------------------------------------------------
    base_model: str = Field(
        BASE_MODEL_ID,
        json_schema_extra={"section": "model and recipe"},
        description="Hub id or local path of the base model ('tiny': embedded)",
    )
    base_revision: str = Field(BASE_MODEL_REVISION, description="pinned Hub revision of the base model")
    quant: Literal["auto", "nf4", "none"] = Field(
        "auto", description="auto = bf16 base where GPU memory allows, else 4-bit NF4; nf4 / none force it"
    )
    epochs: float = Field(3.0, gt=0, description="training epochs (ignored when R1FT_MAX_STEPS is set)")
    max_steps: int = Field(0, ge=0, description="optimizer steps; overrides epochs when > 0")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="peak learning rate")
    lr_scheduler: str = Field(
        "cosine", description="transformers scheduler: linear, cosine, constant, constant_with_warmup, ..."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="warm-up as a fraction of the steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    global_batch: int = Field(
        16, gt=0, description="sequences per optimizer step, all GPUs together (always exactly this many)"
    )
    batch_size: int = Field(
        0, ge=0, description="per-device micro-batch (0: derived); must divide the global batch per GPU"
    )
    grad_accum: int = Field(
        0, ge=0, description="gradient accumulation steps (0: derived); must divide the global batch per GPU"
    )
    max_seq_len: int = Field(
        2048, ge=64, description="longest training sequence in tokens (at most the model's context)"
    )
    lora_r: int = Field(16, gt=0, description="LoRA rank")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    lora_targets: str = Field("all-linear", description="LoRA target modules (comma list or all-linear)")
    optim: Optimizer = Field(
        "auto",
        description="optimizer, an AdamW: auto = paged_adamw_8bit on an NF4 base, else adamw_torch_fused "
        "(32-bit moments; adamw_torch on the CPU)",
    )
    gradient_checkpointing: Literal["auto", "true", "false"] = Field(
        "auto", description="auto = only when the plan says memory needs it"
    )
    attn_implementation: Literal["auto", "flex_attention", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="attention kernel (auto: flex_attention on GPU, sdpa on CPU)"
    )
    padding_free: bool = Field(True, description="pack each micro-batch without pad tokens")
    liger: Literal["auto", "true", "false"] = Field(
        "auto", description="Liger fused kernels (auto: on GPU if installed)"
    )
    torch_compile: Literal["auto", "true", "false"] = Field(
        "auto",
        description="regional torch.compile of the decoder layers (auto: on a GPU of 60 GB or more; "
        "about 2 min of compilation first)",
    )
    seed: int = Field(
        42, ge=0, lt=2**32, description="seed for data order, split and initialisation (0 to 4294967295)"
    )  # the range numpy's seed takes (transformers' set_seed at training start refuses any other)
    save_steps: int = Field(
        200,
        gt=0,
        description="save a checkpoint every N optimizer steps (resume points; also saved at a stop)",
    )
    save_total_limit: int = Field(3, gt=0, description="checkpoints kept on disk")
    logging_steps: int = Field(10, gt=0, description="log every N optimizer steps")
    eval_steps: int = Field(200, gt=0, description="evaluate eval loss every N optimizer steps")

    # --- data -------------------------------------------------------------------------------------
    mathcodeinstruct_source: str = Field(
        "MathLLMs/MathCodeInstruct",
        json_schema_extra={"section": "data"},
        description="Hub dataset id, local file/glob/dir, builtin, or none",
    )
    scibench_source: str = Field(
        "xw27/scibench", description="Hub dataset id, local file/glob/dir, builtin, or none"
    )
    mathcodeinstruct_samples: int = Field(
        24_700, ge=0, description="MathCodeInstruct examples to draw (0: all available)"
    )
    scibench_upsample: int = Field(
        3, ge=1, description="times each SciBench worked solution is repeated in train"
    )
    eval_fraction: float = Field(0.1, gt=0, lt=0.5, description="fraction of examples held out for eval loss")
    max_bad_fraction: float = Field(
        0.01, ge=0, le=1, description="stop if more than this fraction of a source is bad"
    )
    length_policy: Literal["drop", "truncate"] = Field(
        "drop", description="examples longer than max_seq_len: drop or truncate"
    )
    dedup: Literal["problem", "pair"] = Field(
        "pair",
        description="duplicates removed: pair = only exact (problem, solution) repeats; problem = one solution "
        "per problem (README: Data)",
    )
    interpreter_output_loss: bool = Field(
        True,
        description="interpreter output blocks carry loss (the notebook's); false: kept in the context, without loss",
    )
    mathcodeinstruct_revision: str = Field(
        "main",
        description="Hub revision (branch, tag or commit) of a Hub MathCodeInstruct source; pin a commit",
    )
    scibench_revision: str = Field(
        "main", description="Hub revision (branch, tag or commit) of a Hub SciBench source; pin a commit"
    )

    # --- evaluation -------------------------------------------------------------------------------
    eval_math500_samples: int = Field(
        150,
        ge=0,
        json_schema_extra={"section": "evaluation"},
        description="MATH-500 problems scored, a seeded sample of the 500 (0: skip)",
    )
    eval_scibench_samples: int = Field(
        150, ge=0, description="SciBench test problems scored, a seeded sample of the 580 (0: skip)"
    )
    eval_samples: int = Field(
        50, ge=0, description="held-out eval-split problems scored (an in-distribution check; 0: skip)"
    )
    eval_samples_per_problem: int = Field(
        4, ge=1, le=64, description="answers sampled per problem; pass@1 is their mean (DeepSeek: 64)"
    )
    eval_temperature: float = Field(0.6, gt=0, le=2, description="sampling temperature (the model card: 0.6)")
    eval_top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling top_p (the model card: 0.95)")
    eval_max_new_tokens: int = Field(
        16384, ge=16, le=32768, description="new tokens per answer, thinking included (DeepSeek: 32768)"
    )
    eval_batch_size: int = Field(
        0, ge=0, le=4096, description="most answers generated at once (0: as many as the GPU's memory holds)"
    )
    eval_time_budget_s: int = Field(
        900, gt=0, description="seconds of generation for both models; whole problems of one seeded order"
    )
    math500_source: str = Field(
        "HuggingFaceH4/MATH-500",
        description="MATH-500: Hub dataset id, local file/glob/dir, builtin, or none",
    )
    math500_revision: str = Field(MATH500_REVISION, description="pinned Hub revision of MATH-500")

    # --- secrets and the platform's variables (standard names, no prefix) --------------------------
    hf_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    )
    aws_access_key_id: str | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = Field(None, validation_alias="AWS_SESSION_TOKEN")
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION"))
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    container_id: str | None = Field(None, validation_alias="CONTAINER_ID")
    container_api_key: SecretStr | None = Field(None, validation_alias="CONTAINER_API_KEY")
    vast_url: str | None = Field(None, validation_alias="VAST_URL")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):  # fmt: skip
        # Highest priority first: explicit values, the environment, the .env file, then the preset's values.
        env = _Environment(settings_cls)
        return (
            init_settings,
            env,
            dotenv_settings,
            _PresetSource(settings_cls, (init_settings, env, dotenv_settings)),
        )

    @field_validator("gguf")
    @classmethod
    def _gguf_types(cls, v: str) -> str:

        # A type named twice is exported once (twice would write, check and record the same file again).
        types = list(dict.fromkeys(t.strip().lower() for t in v.split(",") if t.strip()))
        bad = [t for t in types if t not in SUPPORTED_GGUF_TYPES]
        if bad:
            raise ValueError(f"unknown GGUF type(s) {bad}; choose from {sorted(SUPPORTED_GGUF_TYPES)}")
        return ",".join(types)

    @field_validator("run_id")
    @classmethod
    def _run_id_chars(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", v):
            raise ValueError(
                "use letters, digits, '.', '_' and '-' (at most 96, starting with a letter or digit)"
            )
        return v

    # --- derived values ---------------------------------------------------------------------------
    @property
    def is_tiny(self) -> bool:
        return self.base_model == TINY_MODEL

    @property
    def gguf_types(self) -> list[str]:
        return [t for t in self.gguf.split(",") if t]

    def public_dict(self) -> dict[str, Any]:
        """Settings as JSON-safe data, published with the run: secrets and credential identifiers (the AWS
        access key id) left out, only whether they are set."""
        hidden = {*SECRET_FIELDS, *CREDENTIAL_IDS}
        data = self.model_dump(mode="json", exclude=hidden)
        data["secrets_set"] = sorted(name for name in hidden if getattr(self, name) is not None)
        return data

    def resolved_run_id(self, data_fingerprint: str = "") -> str:
        """The run id: the user's, else a hash of the settings that shape training and the data."""
        if self.run_id:
            return self.run_id
        shaping = {k: v for k, v in self.public_dict().items() if k in RUN_SHAPING_FIELDS}
        digest = hashlib.sha256(json.dumps([shaping, data_fingerprint], sort_keys=True).encode()).hexdigest()
        return f"r1ft-{self.preset}-{digest[:10]}"


SECRET_FIELDS = ("hf_token", "aws_secret_access_key", "aws_session_token", "container_api_key")
CREDENTIAL_IDS = ("aws_access_key_id",)  # not secret, but they name an account: never published
# Settings whose change makes a different training run (the resume key is derived from these).
RUN_SHAPING_FIELDS = {
    "preset", "base_model", "base_revision", "quant", "epochs", "max_steps", "learning_rate", "lr_scheduler",
    "warmup_ratio", "weight_decay", "global_batch", "max_seq_len", "lora_r", "lora_alpha", "lora_dropout",
    "lora_targets", "optim", "seed", "mathcodeinstruct_source", "scibench_source", "mathcodeinstruct_samples",
    "scibench_upsample", "eval_fraction", "length_policy", "dedup", "interpreter_output_loss",
}  # fmt: skip


# The variables the environment may set, derived from the fields: R1FT_<NAME>, or a field's own aliases.
def env_names() -> dict[str, str]:
    """Every environment variable name a setting is read from -> the field's name."""
    names = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names[f"{PREFIX}{field.upper()}"] = field
        else:
            for name in alias.choices if isinstance(alias, AliasChoices) else [alias]:
                names[str(name)] = field
    return names


# The environment being parsed: os.environ, or the mapping a caller (a test) hands to
# `r1ft.settings_load.load_settings`, which sets it.
ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("r1ft_settings_environ", default=None)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, reading the mapping load_settings was given."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = ENVIRON.get()
        source = os.environ if environ is None else environ
        return parse_env_vars(source, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class _PresetSource(PydanticBaseSettingsSource):
    """The chosen preset's values, below every other source: an explicit variable always wins."""

    def __init__(self, settings_cls: type[BaseSettings], above: tuple[PydanticBaseSettingsSource, ...]):
        super().__init__(settings_cls)
        self.above = above

    def get_field_value(self, field, field_name: str):  # unused: __call__ answers for every field
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        preset = "full"
        for source in self.above:
            value = source().get("preset")
            if value is not None:
                preset = str(value).strip().lower()
                break
        return dict(PRESETS.get(preset, {}))
