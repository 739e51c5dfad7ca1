"""One module per task, each with the same roles under the same names: `<Task>Brain` (the CALDBrain hooks:
task loss, metrics, the key the best checkpoint is chosen by), `build_datasets(hparams, ...)` (datasets from
the manifests a recipe's prepare.py writes) and `run(hparams, run_opts, datasets, ...)` (fit, then test the
best checkpoint: the one entry point a recipe's train.py calls).

- `ctc`: CTC speech recognition (TED-LIUM);
- `utterance_classification`: one label per utterance (SLURP intents, VoxCeleb1 speakers);
- `text_classification`: sequence classification and regression (GLUE, IMDB);
- `causal_lm`: causal language modelling (Pile).

Dataset knowledge (task tables, label rules, preparation) stays in the recipe folders.
"""
