"""Evaluation: did alignment work, and at what cost to helpfulness (stage 7; Bai et al. 2022 sec. 4.3-4.5).

One module per job; nothing heavy is imported here, so the API can read reports without torch:

- `stats.py`          win rates with ties and soft labels, Wilson and bootstrap confidence intervals
- `refusal.py`        the string-pattern refusal detector (documented patterns and exclusions)
- `refusal_judge.py`  the judge-based refusal detector (option log-probs, both orders)
- `datasets.py`       the run's held-out prompts and the named evaluation sets (xstest, advbench, ...)
- `compare.py`        answers of several models and judge win rates under a principle ensemble
- `best_of_n.py`      best-of-n reranking by reward-model score (the inference-time baseline, eval.best_of_n)
- `label_stats.py`    per-principle statistics of a run's AI labels (labels.jsonl)
- `monitors.py`       Goodhart monitors over PPO metrics: length drift, boilerplate, RM-vs-judge divergence, KL;
                      the early-stop / keep-best decision
- `report.py`         the report schema (report.json), `headline()` and the model-card block
- `report_html.py`    the self-contained HTML page with inline SVG plots (`svg.py`)
- `run_compare.py`    runs side by side (reports + stage times and peak memory): GET /v1/runs/compare, rlaif compare

The stage that ties them together is `rlaif/stages/evaluate.py`.
"""
