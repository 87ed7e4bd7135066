"""The run folder, the only contract between training and everything after it.

`files` (names, schemas, atomic writers), `reader` (Run, load_run, weight_summary: reading a run
folder, which is untrusted input), `review_marks` (a person's decisions in review.csv) and
`flag_scores` (suspicion scores computed from the weight history: `dermlow flag`).
"""
