"""Engine-side code built on the ops: the DSpark drafter module (DeepSpec checkpoints), the
reference batched ``generate`` loop with its targets, proposers and length policies, SPS
profiling for the load-aware scheduler, and STS calibration of the confidence head."""
