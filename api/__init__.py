"""spotex api package."""
