"""One table of defaults, mirrored by the CLI (`python -m evaluate.run`) and `evaluate.run.run()`."""

DEFAULTS = dict(
    methods="morse,ddim,dpm",
    task="fmnist",
    budgets="2,4,8,16",       # LSD (= NFE for the Dash-only baselines)
    num_samples=1000,
    batch_size=64,            # the per-image sweet spot on CPU
    device="cpu",
    seed=0,                   # sample i uses seed `seed + i`
    out=None,                 # reports/<task>/<run>
    run="default",
    fid_samples=0,            # Inception FID on this many samples per cell (slow on CPU)
    fid_reference=10000,      # real train images behind the FID reference statistics
    bootstrap=200,            # resamples of seeds for confidence intervals
    saturation=0.05,          # a budget improving FD by < 5% at the next budget is saturated
    dot_ratio=None,           # N used to plan Morse schedules; None: the Dot's model card
    dots_per_dash=None,       # None: the Dot's model card
    min_samples=200,          # refuse below this (FD of 128-d features needs full-rank covariance)
    warn_samples=1000,
    spacing="trailing",       # diffusers timestep_spacing where the scheduler offers it
    data_dir=None,
    force=False,
)
