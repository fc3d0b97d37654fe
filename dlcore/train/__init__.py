"""Training engine: state, pure steps, the eager/jit/pmap/sharded switch, and `fit`."""
from dlcore.train.loop import NonFiniteLossError, fit
from dlcore.train.modes import MODES, Runner, set_host_devices
from dlcore.train.state import TrainState, create_train_state, variables_of
from dlcore.train.steps import (make_eval_step, make_train_step, mean_metrics, repeat_step,
                                scan_steps)

__all__ = ["MODES", "NonFiniteLossError", "Runner", "TrainState", "create_train_state",
           "fit", "make_eval_step", "make_train_step", "mean_metrics", "repeat_step",
           "scan_steps", "set_host_devices", "variables_of"]
