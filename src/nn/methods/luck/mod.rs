//! Tian et al. 2019 ("Luck Matters"): the teacher network and its data ([`teacher`]), and the
//! matching of student nodes to teacher nodes whose initial rank is the "luck" ([`correlate`]).

pub mod correlate;
pub mod teacher;
