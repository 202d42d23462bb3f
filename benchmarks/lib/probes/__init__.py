"""The probe sweep: datasets x probe methods x hooks, and the generalisation matrix (moved out of ``probe``)."""
