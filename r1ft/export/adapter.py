"""The adapter as published: its `adapter_config.json` names the base model by its Hub id and revision, as
PEFT writes it for a base loaded by id, not by the local snapshot directory training loaded it from (a path
that exists only inside the container). `AutoPeftModelForCausalLM.from_pretrained(<published adapter>)`
then fetches the pinned base wherever it runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from r1ft.files import write_json_atomic

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def name_base_by_id(adapter_dir: Path, repo_id: str, revision: str) -> bool:
    """Point the adapter's config at the Hub base `repo_id` at `revision` (PEFT's `base_model_name_or_path`
    and `revision` fields, read by AutoPeftModel); whether the file changed. No config: nothing to do."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        return False
    config = json.loads(path.read_text(encoding="utf-8"))
    wanted = {"base_model_name_or_path": repo_id, "revision": revision or None}
    if all(config.get(k) == v for k, v in wanted.items()):
        return False
    was = config.get("base_model_name_or_path")
    config.update(wanted)
    write_json_atomic(path, config)  # PEFT wrote its keys sorted; updating them keeps that order
    log.info("adapter config: base model %s@%s (was %s)", repo_id, revision, was)
    return True
