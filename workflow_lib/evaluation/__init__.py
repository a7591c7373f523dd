"""Offline evaluation and the no-match calibration: which queries (``plan``, ``songs``, ``queries``), the neural
system and the audfprint baseline on the very same files (``neural``, ``audfprint``), and what came out
(``metrics``, ``report``). ``calibration`` fits the no-match threshold from unknown-song queries.

Nothing under ``search`` or ``listener`` imports this package: evaluation sits above search.
"""
