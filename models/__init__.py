"""data2vec models. Deliberately empty of imports: ``d2v.models.preprocessing`` is torch-free and used by the
serving path, so importing this package must not pull torch. Import the torch modules
(``d2v.models.transformer`` ...) directly."""
