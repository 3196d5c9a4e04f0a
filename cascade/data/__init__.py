"""Data: benchmark tasks (config + prompt + grader) and the results records (schema, store)."""
