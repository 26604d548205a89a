"""Notifications (CONTRACT §6): task changes that a person must act on, delivered on the channels they have."""
