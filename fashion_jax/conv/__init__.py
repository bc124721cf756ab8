"""3x3 convolutions for the models: one dispatcher (`dispatch.conv3x3`) over interchangeable
formulations that share parameters and maths.

  dispatch.py     picks a formulation per call ("auto": native on one CPU device, else Winograd /
                  im2col; XLA's convolution on accelerators) and adds bias and ReLU
  native_conv.py  direct AVX-512 / AVX2 kernels as XLA FFI custom calls (native_conv.cc)
  winograd.py     Winograd F(2x2, 3x3) in XLA operations
  im2col.py       nine shifted slices concatenated on channels and one matrix product
"""
