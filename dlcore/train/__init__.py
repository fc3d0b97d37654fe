"""Training engine: state, pure steps, the eager/jit/pmap/sharded switch, and `fit`."""
from dlcore.train.loop import (Evaluator, MetricWriter, NonFiniteLossError, batch_evaluator, fit,
                               host_mean, run_evaluators, step_of)
from dlcore.train.members import (Indexed, MemberRunner, PerMember, create_members,
                                  member_batches, member_seeds, over_members, per_member)
from dlcore.train.modes import MODES, Runner, set_host_devices
from dlcore.train.state import (TrainState, create_train_state, stack_states, unstack_state,
                                variables_of)
from dlcore.train.steps import (Gathered, fused_epoch, make_eval_step, make_train_step,
                                mean_metrics, repeat_step, scan_steps)

__all__ = ["MODES", "Evaluator", "Gathered", "Indexed", "MemberRunner", "MetricWriter",
           "NonFiniteLossError", "PerMember", "Runner", "TrainState", "batch_evaluator",
           "create_members", "create_train_state", "fit", "fused_epoch", "host_mean",
           "make_eval_step", "make_train_step", "mean_metrics", "member_batches",
           "member_seeds", "over_members", "per_member", "repeat_step", "run_evaluators",
           "scan_steps", "set_host_devices", "stack_states", "step_of", "unstack_state",
           "variables_of"]
