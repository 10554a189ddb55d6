"""One module per task: it encodes examples, picks the head, and names its metrics; the loop does the rest."""
