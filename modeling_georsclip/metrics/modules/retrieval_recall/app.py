"""Hub Space entry point: an interactive widget for this metric (needs gradio)."""

import evaluate

module = evaluate.load("retrieval_recall.py")
evaluate.utils.launch_gradio_widget(module)
