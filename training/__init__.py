"""Training the hashing head with mined triplets: ``python -m training --help``.

``losses`` (pure ``keras.ops`` functions), ``sampler`` (P x K batches, group split), ``data``
(expanded collection, cached features), ``train`` (the ``keras.Model`` and callbacks),
``pipeline`` (the CLI's run), ``study`` (learned codes vs the baselines on held-out groups).
"""
