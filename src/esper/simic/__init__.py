"""Reinforcement learning for the controller: vectorized PPO, rewards, features, gradients."""
