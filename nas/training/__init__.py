"""Training: the configuration, one optimiser step, the loop, checkpoints, evaluation, the weight EMA,
progressive learning (EfficientNetV2 section 4.2), and a whole ``nas train`` run: what a user asks
(:mod:`nas.training.options`) and the run with its resume and final evaluation (:mod:`nas.training.run`)."""
