"""The checkpoint directory (`directory`: lock, identity record, repair, the best checkpoint) and
the resume policy (`resume`)."""
