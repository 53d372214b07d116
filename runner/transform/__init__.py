"""Records into keyed records: mapping, compiled JMESPath, the added functions."""
