# Placeholder until the CUDA plugin lands: nothing to build yet.
cuda:
	@echo "notice: CUDA plugin sources not present yet"
