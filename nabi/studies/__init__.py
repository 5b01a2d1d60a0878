"""Studies: many runs and what they show together.

``jobs`` runs resumable jobs (in this process or in worker processes) and records each
one's result; ``experiment`` is the paired background-class experiment (models A and B,
P1–P4); ``ablation`` trains variants that differ in one factor; ``stats`` holds the
statistics and tables both report with.
"""
