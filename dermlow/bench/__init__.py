"""Benchmarks: the paper's grid over methods, lambdas, learning rates and seeds (`grid`), its report
with validation-based selection and paired differences (`report`), and the research-only evaluation
of flag scores against deliberately flipped labels (`flag_eval`)."""
