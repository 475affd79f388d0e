"""One trial, whatever schedules it: the settings that define a search, the proxy a candidate is
trained as, the evaluator that scores it, and the objective every backend runs."""
