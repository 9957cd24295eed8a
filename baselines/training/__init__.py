"""The training wing: what the suite's trainers (Dash, text Dash, CLIP, classifier, LCM distillation, and
morse.train's Dot) share, so that each trainer holds only its model, its batch and its card.

* `loop`: the resumable training loop (optimiser step, learning-rate factor, EMA, atomic checkpoints);
* `schedule`: the learning-rate factors (linear warm-up, then constant or cosine);
* `recipe`: the command text a card records, the resume key that ties a checkpoint to it, and the one-line
  `error: ...` (exit 2) a trainer's command line prints for bad input;
* `cards`: model cards, the loss curve, and the save -> card -> print tail of a finished run.
"""
