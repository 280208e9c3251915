"""Training: state, jitted steps, optimizer and learning-rate schedules, losses, the loop."""
