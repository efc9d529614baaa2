"""Optimizers and learning-rate schedules (plain torch, no Lightning): FTRL, the name factory, TF schedules.

The functional form of FTRL is :func:`lightning_dnn.optim.ftrl.ftrl`; it is not re-exported here, where the
name would shadow the :mod:`lightning_dnn.optim.ftrl` module.
"""

from lightning_dnn.optim.factory import OPTIMIZERS, OptimizerSpec, build_optimizer, register_optimizer
from lightning_dnn.optim.ftrl import FTRL
from lightning_dnn.optim.schedules import (
    SCHEDULE_INTERVAL,
    SCHEDULES,
    ScheduleSpec,
    build_schedule,
    exponential_decay,
    performance_schedule,
    piecewise_constant,
    power_decay,
)

__all__ = [
    "FTRL",
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_INTERVAL",
    "OptimizerSpec",
    "ScheduleSpec",
    "build_optimizer",
    "build_schedule",
    "exponential_decay",
    "performance_schedule",
    "piecewise_constant",
    "power_decay",
    "register_optimizer",
]
