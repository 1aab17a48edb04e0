"""The model gate's report as the challenger's run keeps it (Markdown)."""

from ray_app.gate import Check, GateReport


def test_markdown_puts_both_models_side_by_side_and_lists_every_check():
    report = GateReport("models:/m/2", "models:/m/1", "h1", "roc_auc",
                        [Check("floor roc_auc", True, "0.9100", ">= 0.85"),
                         Check("better than champion (roc_auc)", False, "gain -0.0050", "CI above +0.0100")],
                        {"challenger_roc_auc": 0.91, "champion_roc_auc": 0.915, "challenger_accuracy": 0.8,
                         "holdout_rows": 600, "gain_ci_low": -0.02})
    report.attributions = {"challenger": {"x0": 0.6, "seg": 0.4}, "champion": {"x0": 0.5, "x9": 0.5}}
    text = report.markdown()
    assert "| x0 | 0.600 | 0.500 |" in text and "| seg | 0.400 | - |" in text and "| x9 | - | 0.500 |" in text
    assert text.startswith("# Model gate: REJECT\n")
    assert "models:/m/2 against models:/m/1 on holdout `h1` (600 rows): better than champion" in text
    assert "| roc_auc | 0.9100 | 0.9150 |" in text and "| accuracy | 0.8000 | - |" in text
    assert "| better than champion (roc_auc) | NO | gain -0.0050 | CI above +0.0100 |" in text
    assert "gain_ci_low" not in text.split("| check |")[0]  # only the models' own figures are compared
    alone = GateReport("models:/m/1", None, "h1", "roc_auc", [Check("floor roc_auc", True, "0.9", ">= 0.85")],
                       {"challenger_roc_auc": 0.9})
    assert alone.markdown().startswith("# Model gate: PROMOTE\n") and "against no champion" in alone.markdown()
