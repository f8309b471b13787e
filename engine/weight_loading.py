"""Loading a new checkpoint into a running torch runner, on every tensor-parallel rank: the runner half of
engine/weight_updates.py (TorchModelRunner's base class)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.model.loader import load_weights, safetensors_files
from engine.model.lora import projections_unwrapped
from engine.model.parallel import TPGroup
from engine.sampling_params import InvalidRequestError
from engine.weight_updates import WeightsLostError

if TYPE_CHECKING:
    from engine.disk_store import DiskKVStore
    from engine.model.llama import CausalLM
    from engine.tp_workers import TensorParallelWorkers


class WeightLoading:
    """Needs the runner's model, its folder, its tensor-parallel group and workers, and its disk store."""

    model: CausalLM
    model_dir: Path
    tp: TPGroup
    workers: TensorParallelWorkers | None
    disk: DiskKVStore | None
    weights_stale: bool

    if TYPE_CHECKING:
        def disk_fingerprint(self) -> dict: ...

    def update_weights(self, model_dir: Path, param: str = "model_path") -> None:
        """A checkpoint of the same model copied into the parameters on every rank (engine/weight_updates.py).
        One that fails part-way is rolled back (InvalidRequestError on `param`); WeightsLostError where that
        fails too."""
        previous = self.model_dir
        try:
            self._load_everywhere(model_dir)
        except Exception as exc:
            try:
                self._load_everywhere(previous)
            except Exception as again:
                raise WeightsLostError(f"loading {model_dir} failed ({exc}) and reloading {previous} failed "
                                       f"too ({again})") from again
            raise InvalidRequestError(f"{model_dir}: {exc}; the weights of {previous} are served still",
                                      param) from None
        if self.workers is not None:
            self.workers.call("adopt_weights", model_dir)
        self.adopt_weights(model_dir)

    def _load_everywhere(self, model_dir: Path) -> None:
        if self.workers is not None:
            self.workers.call("load_weights_from", model_dir)
        self.load_weights_from(model_dir)

    def load_weights_from(self, model_dir: Path) -> None:
        """This rank's part of the checkpoint in `model_dir`, copied into its parameters."""
        with projections_unwrapped(self.model):
            load_weights(self.model, safetensors_files(model_dir), self.tp)
        self.weights_stale = False  # a whole checkpoint is in them (engine/runner_sleep.py)

    def adopt_weights(self, model_dir: Path) -> None:
        """`model_dir` is what this rank serves: its disk file's index starts afresh under its fingerprint."""
        self.model_dir = Path(model_dir)
        if self.disk is not None:
            self.disk.flush()  # what was queued is indexed under the old fingerprint first
            self.disk.fingerprint = self.disk_fingerprint()
            self.disk.persist([])
