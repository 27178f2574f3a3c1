"""HTTP front ends: the BossDB dialect and the operations routes."""
