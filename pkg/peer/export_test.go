package peer

// Polls is how many lookups the server's wait poll has made.
func Polls(s *Server) int64 { return s.polls.Load() }
