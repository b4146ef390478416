"""The shared math of locate-then-edit methods (ROME, MEMIT, KN), one copy used by all of them.

Vocabulary: at layer L the MLP's output matrix W maps a key k (its input, d_ff) to a value v (its
output, d). ``keys`` finds the key of a subject, ``values`` optimises the value that makes the model
emit the new target, ``updates`` writes key -> value associations into W, whitened by the keys'
``second_moments``. Hooks and partial forward passes are in ``harness.activations``; the texts the
model writes for context prefixes and the moment corpus in ``harness.model_text``.
"""
