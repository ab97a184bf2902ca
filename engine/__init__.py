"""spotex engine package."""
