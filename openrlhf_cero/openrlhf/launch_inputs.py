"""Launch-time checks of the files a run reads: the reward function, the agent, the prompts.

Stock OpenRLHF opens these only inside its Ray actors, after the cluster, the models and
the engines are up, and reports a missing or empty one badly: a ``--reward.remote_url``
file that does not exist is logged by the rollout actor while the driver waits forever;
an empty prompt set ends in ``ActorDiedError`` around a bare ``StopIteration``. Checking
the paths in the driver costs milliseconds and names the flag. Hub data-set names and
HTTP reward servers cannot be checked without the network and are left to OpenRLHF.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

from openrlhf_cero.allocators import AllocatorError

# The local file types OpenRLHF's ``blending_datasets`` loads by extension.
_DATA_FILE_TYPES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
# Bytes read to decide whether a text data file holds a record (its first one).
_PEEK_BYTES = 1 << 16


def check_launch_inputs(args: SimpleNamespace) -> None:
    """Refuse, with the flag named, reward/agent files that do not exist and prompt data
    that is missing or holds no record."""
    _check_reward_functions(args)
    agent = getattr(args.train, "agent_func_path", None)
    if agent and not Path(agent).is_file():
        raise AllocatorError(f"--train.agent_func_path {agent}: no such file; give the path of the agent's .py file")
    _check_prompt_data(args.data.prompt_dataset)
    if args.data.max_samples < 1:
        raise AllocatorError(f"--data.max_samples={args.data.max_samples} leaves no prompt to train on; it must be >= 1")


def _check_reward_functions(args: SimpleNamespace) -> None:
    urls = args.reward.remote_url or []
    if isinstance(urls, str):
        urls = urls.split(",")
    for url in urls:
        if url == "agent":  # OpenRLHF's marker for --train.agent_func_path
            continue
        if url.endswith(".py") and not Path(url).is_file():
            raise AllocatorError(
                f"--reward.remote_url {url}: no such file; give a .py file that defines "
                "reward_func(queries, prompts, labels), or the http(s):// address of a reward server"
            )


def _check_prompt_data(datasets: str | None) -> None:
    if not datasets:
        raise AllocatorError("--data.prompt_dataset is required: a local .jsonl/.json/.csv/.parquet file, a folder, "
                             "or a Hugging Face data-set name")
    for entry in datasets.split(","):
        path = entry.split("@")[0].strip()
        looks_local = os.path.splitext(path)[1].lower() in _DATA_FILE_TYPES or path.startswith(("/", "./", "../", "~"))
        if not looks_local:
            continue  # a hub data-set name (or a folder of one): OpenRLHF resolves it
        resolved = Path(path).expanduser()
        if not resolved.exists():
            raise AllocatorError(f"--data.prompt_dataset {path}: no such file or folder")
        if resolved.is_file() and _holds_no_record(resolved):
            raise AllocatorError(
                f"--data.prompt_dataset {path} holds no prompts (an empty file); point it at a data set with at "
                "least one record"
            )


def _holds_no_record(path: Path) -> bool:
    """Whether a local data file is certainly empty, judged from its first bytes (cheap
    for files of any size); formats it cannot judge that way count as not empty."""
    if path.stat().st_size == 0:
        return True
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet

        return pyarrow.parquet.ParquetFile(path).metadata.num_rows == 0
    if suffix not in (".json", ".jsonl", ".csv"):
        return False
    with path.open("rb") as stream:
        head = stream.read(_PEEK_BYTES).decode("utf-8", errors="replace")
    lines = [line for line in head.splitlines() if line.strip()]
    if suffix == ".csv":
        return len(lines) < 2 and len(head) < _PEEK_BYTES  # a header alone
    if not lines:
        return len(head) < _PEEK_BYTES
    if suffix == ".json" and len(head) < _PEEK_BYTES:
        try:
            return json.loads(head) in ([], {})
        except ValueError:
            return False  # JSON lines in a .json file: OpenRLHF reads them, and there are some
    return False
