"""Risk: declarative rules that send big or unusual payments to human review (four-eyes)."""
