"""Training: the config (common options + each method's own), the loop (seeded, resumable, NaN-guarded),
checkpoints, the memory summary, progress, plots."""
from .config import TrainConfig  # noqa: F401
from .loop import Trainer, TrainingDiverged, evaluate, export_args, load_model, load_run_data, train  # noqa: F401
