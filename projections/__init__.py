"""spotex projections package."""
