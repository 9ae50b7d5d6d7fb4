"""Hub Space entry point: an interactive widget for this metric (needs gradio)."""

import evaluate

module = evaluate.load("selo_scores.py")
evaluate.utils.launch_gradio_widget(module)
