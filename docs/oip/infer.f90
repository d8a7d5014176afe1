! Call a model from Fortran through ISO_C_BINDING and the C helper in oip_client.c.
! ./infer_f URL TOKEN prints twice 1.5, 2.5, 4 (test/tensors).
program infer
  use, intrinsic :: iso_c_binding
  implicit none
  interface
    integer(c_int) function oip_infer_fp32(url, token, in, n, out, max_out) &
        bind(C, name="oip_infer_fp32")
      import :: c_char, c_float, c_long, c_int
      character(kind=c_char), dimension(*), intent(in) :: url, token
      real(c_float), dimension(*), intent(in) :: in
      integer(c_long), value :: n, max_out
      real(c_float), dimension(*), intent(out) :: out
    end function
  end interface
  character(len=1024) :: url, token
  real(c_float) :: x(3) = [1.5, 2.5, 4.0], y(3)
  integer(c_int) :: got

  call get_command_argument(1, url)
  call get_command_argument(2, token)
  got = oip_infer_fp32(trim(url) // c_null_char, trim(token) // c_null_char, &
                       x, 3_c_long, y, 3_c_long)
  if (got /= 3) then
    print '(a, i0)', 'inference failed: ', got
    stop 1
  end if
  print '(3f8.2)', y
end program infer
