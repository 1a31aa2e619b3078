"""What we write: newsletters and webinars."""
