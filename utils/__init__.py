"""Small shared helpers, one module per topic.

errors (UserError, one_line, TrainingInterrupted), runtime (signals, device, precision, seeds),
hub (offline flags, reachability probe), logs (the ``kd`` logger), files (atomic writes).
"""
