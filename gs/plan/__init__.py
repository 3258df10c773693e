"""Resource planner: per stage, the predicted peak device memory, host memory and time, beside the
resources the profile gives it; ``python -m gs.plan --configfile FILE`` (rule ``plan``, before any rule that
runs the model) stops with one line when a stage cannot fit.

No memory formula is written by hand where the code can be traced: each stage's step runs at the
config's shapes on fake tensors (:mod:`gs.plan.trace`), the model built from its config
(:mod:`gs.plan.arch`). Host arrays follow the shapes the stages' code allocates, the process baseline
is measured (:mod:`gs.plan.host`), time is FLOPs over a stated throughput (:mod:`gs.plan.devices`),
resources come from the workflow and its profile (:mod:`gs.plan.resources`), the counts of steps per
stage from the config (:mod:`gs.plan.stages`) and the table and checks from :mod:`gs.plan.report`.
"""
