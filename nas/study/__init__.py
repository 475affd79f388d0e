"""What a run is made of, whatever schedules its trials: the problem it solves (an architecture search
or the compound-scaling grid), its run directory, its Optuna storage, samplers and pruners, its
result files, and the fidelity figures it checks itself with."""
