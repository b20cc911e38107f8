"""MATH^2 (papers.md §B): answer equivalence now; the recipe's stages join it here."""
