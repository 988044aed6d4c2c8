"""The training loop for one model (train and validate epochs) and the governor that rolls back."""
