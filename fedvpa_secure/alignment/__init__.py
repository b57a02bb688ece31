"""The alignment stage downstream of a trained reward model: candidate generation, gold rewards,
best-of-N selection and its win rates, and the optional DPO trainer (``.[align]`` extra)."""
