"""Simulated workcell ("twin"): a MuJoCo plant plus the devices' real protocols on loopback."""
