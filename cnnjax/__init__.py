"""cnnjax: the Agrawal-Girshick-Malik (2014) CNN analysis study in JAX/Flax."""
