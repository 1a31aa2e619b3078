"""Public pages: signup, webinar pages, archive, tracking."""
