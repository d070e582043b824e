-- KEYS: circuit hash. The snapshot alone.
return snapshot()
